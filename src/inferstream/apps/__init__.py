"""Applications bundled with inferstream; the core never imports them.

Each is a package that declares what the core needs in one
:class:`inferstream.application.AppSpec` and is found through the ``inferstream.apps``
entry-point group, like any application installed from elsewhere.
"""
