"""What the server and the client share, and nothing else.

``codec`` (numpy arrays <-> ``TensorProto``), ``protos`` (the TF Serving config messages the
pip package lacks), ``errors`` (status errors with TF Serving's codes) and ``contract`` (the
signature, output and file names exports, server and client agree on). Neither program's
code lives here; both import it.
"""
