"""Drop-in replacements for the APIs of other tun/tap libraries, built on tapengine.

``tapengine.compat.pytun``: python-pytun's ``TunTapDevice``, ``Error`` and ``IFF_*`` constants.
"""
