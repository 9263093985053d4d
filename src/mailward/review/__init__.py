"""The analysts' review of held mail: one service above the quarantine and incident response.

``mailward quarantine``, ``mailward web`` and recipients' digest links act
through :mod:`mailward.review.service`; it is built on ``quarantine/`` and
``incidents/``, and neither of those imports it.
"""
