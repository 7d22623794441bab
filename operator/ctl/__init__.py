"""See and steer rollouts from the command line (``mlrollout get|status|promote|...``)."""
