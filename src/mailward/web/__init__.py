"""`mailward web`: the quarantine web page for analysts and, through digest links, recipients.

Needs the ``web`` extra (Starlette, Jinja2, uvicorn, python-multipart,
argon2-cffi); the milter never imports this package.
"""
