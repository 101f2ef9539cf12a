"""memesys: the meme domain and the daemon's faces (gateway, admin, telemetry).

Built on the generic supervision runtime in :mod:`actors`, which never imports this package.
"""
