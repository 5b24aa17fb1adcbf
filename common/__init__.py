"""The bottom layer: what every other package may import (shared exceptions, CPU facts). Imports nothing of ours."""
