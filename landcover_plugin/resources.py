"""Files the plugin shows, found beside this package (standard library only, so any module may import it)."""
import os

ICON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "icon.svg")
