from inference_svc.server import main

main()
