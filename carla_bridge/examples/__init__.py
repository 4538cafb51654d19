"""Example scripts with neural cameras, each runnable against a CARLA server or, with --standin, the stand-in:
synchronous_mode (the stock pattern), depth_camera (LogarithmicDepth), semantic_camera (CityScapesPalette),
two_hertz_camera (sensor_tick), batch_destroy (NeuralClient batches), leaderboard_agent (a leaderboard agent)."""
