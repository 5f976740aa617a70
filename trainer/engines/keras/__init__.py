"""The Keras engine: the run's Keras model trained with Model.fit (TensorFlow 2.15's Keras 2, or tf-keras 2.21)."""
