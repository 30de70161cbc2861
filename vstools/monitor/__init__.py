"""The monitor (DESIGN §9): ``alerts`` is the incident logic (pure), ``sample`` what a check
reads, ``watch`` the checks and mails of one guest, ``daemon`` the APScheduler service with its
watchdog, ``munin`` the standalone Munin plugin."""
