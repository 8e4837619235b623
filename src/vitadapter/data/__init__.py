"""Datasets on disk: the image + annotation layouts of the datasets the zoo was trained on."""
