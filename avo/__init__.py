"""avo: autonomous kernel evolution. See AGENTS.md for the map of the repo."""
__version__ = "0.1.0"


def __getattr__(name):
    # `avo.apply` is imported lazily so `import avo` stays cheap for the CLI and workers.
    if name == "apply":
        import importlib
        return importlib.import_module("avo.apply")
    raise AttributeError(name)
