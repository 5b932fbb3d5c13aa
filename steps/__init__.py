"""The built-in steps, written only against the public step API (buildsys.step).

Registered through the `buildsys.steps` entry-point group, exactly like a third-party plugin.
"""
