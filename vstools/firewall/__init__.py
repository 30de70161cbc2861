"""The host-enforced firewall (DESIGN §7): ``model`` compiles firewall.conf into one ruleset
model and ``render`` renders it as nftables transactions or an iptables-restore file (both
pure); ``backends`` load it (``nft``, ``iptables-restore``), ``iptc`` through python-iptables;
``host`` is the firewall as commands use it: every running guest's rules, one transaction per
change under a host-wide lock."""
