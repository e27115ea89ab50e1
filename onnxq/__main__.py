from onnxq.entry import main

main()
