from searchpipe.cli import main

main()
