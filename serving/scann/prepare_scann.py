"""Wire ScaNN's TF ops into a TF Serving source tree (used by this folder's Dockerfile).

    python3 prepare_scann.py /scann-src /tensorflow-serving

1. ScaNN builds against a pip-installed TensorFlow (``@local_config_tf``); inside TF Serving it
   must build against the TensorFlow that TF Serving compiles (``@org_tensorflow``).
2. ScaNN's op BUILD file loads pybind11 rules TF Serving's workspace does not have; the Python
   binding target is dropped, and an always-linked library of the op definitions and kernels
   (``scann_ops_static``) is added.
3. TF Serving's WORKSPACE gets ScaNN as ``@com_google_scann`` and the model server links the
   library (``SUPPORTED_TENSORFLOW_OPS``), which is how TF Serving takes custom ops.

Each edit checks that the text it changes is there and stops otherwise: a different source
layout needs the same edits made by hand. Not run in this project (see the Dockerfile).
"""
import re
import sys


def edit(path, transform):
    with open(path) as f:
        text = f.read()
    new = transform(text)
    if new == text:
        sys.exit(f"prepare_scann: nothing to change in {path}; edit it by hand")
    with open(path, "w") as f:
        f.write(new)
    print(f"edited {path}")


def main(scann, serving):
    edit(f"{scann}/scann/oss_wrappers/BUILD.bazel", lambda t: re.sub(
        r'"@local_config_tf//:libtensorflow_framework",\s*"@local_config_tf//:tf_header_lib",',
        '"@org_tensorflow//tensorflow/core:tensorflow_opensource",', t))

    def ops_build(text):
        text = re.sub(r'load\("@pybind11_bazel//:build_defs.bzl", "pybind_library"\)\n', "", text)
        text = re.sub(r"pybind_library\(\n(?:    .*\n|\n)*?\)\n", "", text)
        return text + ('\ncc_library(\n    name = "scann_ops_static",\n    alwayslink = 1,\n'
                       '    deps = [":scann_ops", ":scann_ops_kernels"],\n)\n')
    edit(f"{scann}/scann/scann_ops/cc/BUILD.bazel", ops_build)

    edit(f"{serving}/WORKSPACE", lambda t: t + (
        '\nlocal_repository(\n    name = "com_google_scann",\n    path = "%s",\n)\n' % scann))
    # next to TensorFlow Text's ops, which TF Serving links the same way
    edit(f"{serving}/tensorflow_serving/model_servers/BUILD", lambda t: re.sub(
        r'(\n(\s*)"@org_tensorflow_text//tensorflow_text:ops_lib",\n)',
        r'\1\2"@com_google_scann//scann/scann_ops/cc:scann_ops_static",\n', t, count=1))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
