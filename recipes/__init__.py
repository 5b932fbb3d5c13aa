"""The built-in recipes (installed as ``buildsys.builtin_recipes``): one folder per recipe."""
