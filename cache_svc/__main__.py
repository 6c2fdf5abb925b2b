from cache_svc.server import main

main()
