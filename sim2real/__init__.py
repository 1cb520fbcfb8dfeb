"""What leaves the lab: policy export, safety filters and the deployment runtime.

``sim2real.export`` writes a policy as ONNX (or TorchScript) plus a JSON sidecar (needs torch);
``sim2real.runtime`` loads and runs an ONNX export with numpy and onnxruntime only (no torch) and
``sim2real.loop`` drives a robot with it at a fixed rate, behind the safety filters and a watchdog;
``sim2real.robots`` holds robot adapters, including a MuJoCo sim2sim robot; ``sim2real.deploy``
ties them together for ``robo-rl deploy``. This package file imports nothing, so a robot computer
can import the runtime without the training stack.
"""
