def test_pymilter_extension_is_not_shadowed():
    """Our package is mailward.milter; the top-level name `milter` must stay pymilter's C extension."""
    import importlib.machinery

    import milter

    assert milter.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert hasattr(milter, "register") and hasattr(milter, "main")
    import Milter
    import mime  # noqa: F401  (pymilter's module, also not shadowed)

    assert Milter.CONTINUE == milter.CONTINUE
