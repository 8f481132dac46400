using TokenMill.Server.Cli;

return Cli.Run(args, Console.Out, Console.Error);
