package main

import "github.com/spf13/cobra"

func (a *app) importCommand() *cobra.Command {
	return group("import", "carry targets over from LIO (targetcli) or tgt")
}
