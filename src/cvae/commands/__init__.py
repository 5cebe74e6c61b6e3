"""Sub-commands of the ``cvae`` tool. Each module defines ``add_parsers(subparsers)``; every parser
sets ``func`` to a function taking the parsed arguments. Add a module here to add commands."""

MODULES = [
    "cvae.commands.core",  # train, sample, reconstruct
    "cvae.commands.evaluate",  # evaluate, evaluator train
    "cvae.commands.apps",  # interpolate, traverse, transfer, anomaly, augment, embed
    "cvae.commands.serve",  # serve (the web page and JSON API; the extra cvae[serve])
    "cvae.commands.recommend",  # recommend train, recommend RUN
    "cvae.commands.sweep",  # sweep (many small models at once)
]
