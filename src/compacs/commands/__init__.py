"""The ``compacs`` sub-commands, one module each: ``NAME``, ``HELP`` (and optionally
``DESCRIPTION``), ``add_arguments(parser)`` and ``run(settings, args) -> exit code``.
``compacs.cli`` lists them and dispatches; the work itself is in ``compacs.admin`` (and
``compacs.node`` for ``serve``), which return reports the command prints."""
