"""Nothing LeRobot's writer or reader calls; present because ``transforms.py`` imports it."""
