"""SSH transport for tunnelmesh."""
