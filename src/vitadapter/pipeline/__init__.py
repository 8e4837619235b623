"""The test-time data flow shared by every backend (numpy, OpenCV, Pillow; no torch): images ->
preprocess -> windows -> (a backend) -> merge -> result."""
