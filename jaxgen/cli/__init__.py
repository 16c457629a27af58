"""The ``jaxgen`` command: ``generate | score | convert | crosscheck`` (entry point :func:`jaxgen.cli.app.main`)."""
