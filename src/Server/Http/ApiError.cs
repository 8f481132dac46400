using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace TokenMill.Server.Http;

/// <summary>
/// An error answered in OpenAI's shape, <c>{"error":{"message","type","param","code"}}</c>, with its
/// HTTP status. Thrown anywhere in a handler; the endpoint wrapper writes it.
/// </summary>
public sealed class ApiErrorException(int status, string message, string type, string? param = null, string? code = null) : Exception(message)
{
    public int Status { get; } = status;
    public string Type { get; } = type;
    public string? Param { get; } = param;
    public string? Code { get; } = code;

    public static ApiErrorException BadRequest(string message, string? param = null, string? code = null) =>
        new(StatusCodes.Status400BadRequest, message, "invalid_request_error", param, code);

    public static ApiErrorException Unauthorized() =>
        new(StatusCodes.Status401Unauthorized, "Incorrect API key provided. Pass it as 'Authorization: Bearer <key>'.",
            "invalid_request_error", null, "invalid_api_key");

    public static ApiErrorException ModelNotFound(string model, string served) =>
        new(StatusCodes.Status404NotFound, $"The model '{model}' does not exist; this server serves '{served}'.",
            "invalid_request_error", "model", "model_not_found");

    public static ApiErrorException Overloaded(string message) =>
        new(StatusCodes.Status429TooManyRequests, message, "rate_limit_error", null, "rate_limit_exceeded");

    public static ApiErrorException TooLarge(long limit) =>
        new(StatusCodes.Status413PayloadTooLarge, $"The request body is larger than the limit of {limit} bytes.",
            "invalid_request_error", null, "request_too_large");

    public void WriteTo(Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteStartObject("error");
        w.WriteString("message", Message);
        w.WriteString("type", Type);
        if (Param is null) w.WriteNull("param"); else w.WriteString("param", Param);
        if (Code is null) w.WriteNull("code"); else w.WriteString("code", Code);
        w.WriteEndObject();
        w.WriteEndObject();
    }
}
