"""The face pipeline: scenes, sampling, detection, embedding, tracking."""
