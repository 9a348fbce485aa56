"""python -m binattn"""
from binattn.cli import main

main()
