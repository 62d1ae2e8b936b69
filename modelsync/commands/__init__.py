"""The commands' core: ``def command(settings, ...) -> result``. No click, no printing.

Each CLI command turns its flags into a :class:`~modelsync.settings.Settings`, calls one
function here, and renders what comes back.
"""
