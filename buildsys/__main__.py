from buildsys.launcher import main

main()
