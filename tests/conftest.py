import os
import sys

# Tests import the helpers as `utils` and the package from the checkout or the install.
sys.path.insert(0, os.path.dirname(__file__))
