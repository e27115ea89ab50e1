from onnxq.cli import main

main()
