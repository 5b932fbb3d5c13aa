"""Help topics shipped as package data: one Markdown file per topic, shown by `buildsys help TOPIC`."""
