using Ferry.Cli;

// The first Ctrl+C cancels the migration cleanly (the source guest keeps running); a second one ends the process.
using var cancel = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) =>
{
    if (cancel.IsCancellationRequested) return;
    e.Cancel = true;
    cancel.Cancel();
};
return FerryCommand.Run(args, CliConsole.FromProcess(), cancel.Token);
