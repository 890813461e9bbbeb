from nla.cli import main

main()
