using System.Net;

namespace TokenMill.Models.Hub;

/// <summary>
/// A model could not be had from the Hugging Face Hub or its cache: the message says which repository, file and
/// revision, and what to do. An <see cref="IOException"/>, so the CLI reports it as one line.
/// </summary>
public sealed class HubException : IOException
{
    public HubException(string message, HttpStatusCode? status = null, Exception? inner = null) : base(message, inner) => Status = status;

    /// <summary>The Hub's HTTP status, when it answered.</summary>
    public HttpStatusCode? Status { get; }
}
