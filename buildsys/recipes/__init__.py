"""Recipes: template folders that `buildsys init` renders into a new project.

`manifest` reads a recipe (its `recipe.yaml` and fields) and finds the built-in ones, `render`
writes one into a directory, `cache` fetches git-hosted ones (`git+URL[@REV][#SUBDIR]`).
"""
