"""Triton Python-backend model code. Never imported here: `deploy/triton.py` copies these files into a
model repository as `<model>/1/model.py`, where Triton's Python backend stub imports them (it provides
`triton_python_backend_utils`)."""
