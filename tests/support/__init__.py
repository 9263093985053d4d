"""What the tests share, one of each: the mail builder and test payloads (``support.mail``) and the
milter driven in process on the daemon's own runtime (``support.milter``)."""
