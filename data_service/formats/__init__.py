"""On-disk formats without TensorFlow: TFRecord framing, tf.train.Example, TFDS metadata and split expressions, the RLDS reader and writer, LeRobot v2.1/v3.0."""
