"""Developer tools run from the source checkout (not installed): generated install assets."""
