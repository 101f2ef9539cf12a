"""A small, generic Erlang/OTP-style supervision runtime on Thespian ``multiprocTCPBase``.

It knows nothing of memes and never imports :mod:`memesys`.
"""
