"""Save a tiny untrained Keras model of the member contract (run inside the train image).

Float32 [N, S, S, 3] pixels 0..255 in, ``Rescaling(1/255)`` first, two-way softmax
``probabilities`` out: enough for ``histoedge export --keras`` to convert and package.

Example::

    python make_keras_model.py /work/out/tiny.keras 16
"""

import sys

import keras


def main(path: str, size: int) -> None:
    keras.utils.set_random_seed(0)
    image = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(image)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    probabilities = keras.layers.Dense(2, activation="softmax", name="probabilities")(x)
    keras.Model(image, probabilities).save(path)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 16)
