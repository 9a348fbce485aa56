"""python -m binattn.cli"""
from binattn.cli import main

main()
