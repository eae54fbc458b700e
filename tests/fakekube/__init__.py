"""An in-process fake kube-apiserver that speaks the real wire protocol to real clients."""
