from mixitcli.cli import main

main()
