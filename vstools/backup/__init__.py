"""Backups with borgbackup (DESIGN §10): the slave's side (``slave``: a guest archived into the
master's repository over SSH), the master's (``master``: the repository, retention,
verification, restore), borg's command lines and answers (``borg``), retention (``retention``)
and what the master records of them (``records``)."""
