"""Running tunnelmesh as a system service: systemd units, ``sd_notify``, crash cleanup."""
