# Bytecode as a pip install leaves it: the image's site-packages have none and PYTHONDONTWRITEBYTECODE is set, so
# compile it once into a prefix folder and let every later process read it (and write what is missing).
SP=$(python -c "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))")
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=/tmp/pyc
/usr/bin/time -f "compileall %e s" timeout 200 python -m compileall -q -j 16 $SP /tmp/site $PWD > /tmp/compileall.txt 2>&1
